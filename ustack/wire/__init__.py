"""Wire formats: IPv4, TCP (with options), ICMP echo, checksums. Never sees a TCB."""

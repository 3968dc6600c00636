"""Counters named like Linux's MIBs, as `nstat` prints them (TcpExtTW, TcpOutRsts, ...).

One `Stats` object per stack. The table, the shell and the TCBs increment it where the
event happens; tools read it through the control socket.
"""

from __future__ import annotations

# Order matters only for display: RFC 4022 MIB first, then the Linux extensions. Only
# counters that something increments belong here (tests/test_control.py checks): Linux
# MIBs for events ustack never has would
# read 0 forever and suggest a check that is not made.
NAMES: tuple[str, ...] = (
    "IpInReceives", "IpInHdrErrors", "IpInAddrErrors", "IpInUnknownProtos", "IpInDelivers",
    "IpOutRequests", "IpReasmFails",
    "IcmpInMsgs", "IcmpInEchos", "IcmpOutMsgs", "IcmpOutEchoReps", "IcmpInErrors",
    "TcpActiveOpens", "TcpPassiveOpens", "TcpAttemptFails", "TcpEstabResets", "TcpCurrEstab",
    "TcpInSegs", "TcpOutSegs", "TcpRetransSegs", "TcpInErrs", "TcpOutRsts", "TcpInCsumErrors",
    "TcpExtTW", "TcpExtTWRecycled", "TcpExtTWKilled", "TcpExtPAWSActive", "TcpExtPAWSEstab",
    "TcpExtPAWSTimewait", "TcpExtPAWSOldAck", "TcpExtTCPTimeWaitOverflow", "TcpExtTCPAbortOnClose",
    "TcpExtTCPAbortOnData", "TcpExtTCPAbortOnLinger", "TcpExtTCPAbortOnTimeout",
    "TcpExtTCPChallengeACK", "TcpExtTCPSYNChallenge",
    "TcpExtTCPACKSkippedChallenge", "TcpExtTCPACKSkippedTimeWait", "TcpExtTCPACKSkippedSeq",
    "TcpExtTCPACKSkippedPAWS", "TcpExtTCPACKSkippedSynRecv", "TcpExtListenOverflows", "TcpExtListenDrops",
    "TcpExtSyncookiesSent", "TcpExtSyncookiesRecv", "TcpExtSyncookiesFailed",
    "TcpExtTCPReqQFullDoCookies", "TcpExtTCPReqQFullDrop",
    "TcpExtEmbryonicRsts", "TcpExtTCPTimeouts", "TcpExtTCPKeepAlive", "TcpExtTCPFastRetrans",
    "TcpExtTCPSlowStartRetrans", "TcpExtTCPLostRetransmit",
    "TcpExtTCPOFOQueue", "TcpExtTCPDupAcks", "TcpExtDelayedACKs", "TcpExtTCPHPHits",
    "TcpExtTCPHPAcks",
    "TcpExtTCPZeroWindowDrop", "TcpExtTCPWinProbe", "TcpExtTCPSackRecovery",
    "TcpExtTCPRenoRecovery", "TcpExtTCPDSACKRecv", "TcpExtTCPBadOptions",
    "TcpExtTCPLossProbes", "TcpExtTCPLossProbeRecovery", "TcpExtTCPAbortOnMemory",
    "TcpExtTCPHystartTrainDetect", "TcpExtTCPHystartTrainCwnd",
    "TcpExtTCPHystartDelayDetect", "TcpExtTCPHystartDelayCwnd",
    "IpExtInECT1Pkts", "IpExtInECT0Pkts", "IpExtInCEPkts", "TcpExtTCPDeliveredCE",
    "UstackTcpEcnOk", "UstackTcpEcnCwr",
    "TcpExtTCPDSACKOldSent", "TcpExtTCPDSACKOfoSent", "TcpExtTCPDSACKOfoRecv",
    "TcpExtTCPDSACKRecvSegs", "TcpExtTCPDSACKIgnoredDubious", "TcpExtTCPFullUndo",
    "TcpExtTCPPartialUndo", "TcpExtTCPDSACKUndo", "TcpExtTCPLossUndo",
    "TcpExtTCPSpuriousRTOs", "TcpExtTCPSACKReorder", "TcpExtTCPTSReorder",
    "UstackImpairDropped", "UstackImpairCorrupted", "UstackImpairDuplicated",
    "UstackImpairReordered", "UstackImpairCeMarked",
    "TcpExtPruneCalled", "TcpExtOfoPruned", "TcpExtTCPOFODrop",
    "TcpExtTCPMemoryPressures", "TcpExtTCPMemoryPressuresChrono", "TcpExtRcvPruned",
    "TcpExtTCPRcvQDrop",
    # The HTTP server's defences (ustack/apps/http.py COUNTERS).
    "UstackHttpHeaderTimeouts", "UstackHttpKeepaliveTimeouts", "UstackHttpBodyTimeouts",
    "UstackHttpSendTimeouts", "UstackHttpUriTooLong", "UstackHttpHeaderTooLarge",
    "UstackHttpBodyTooLarge",
    "UstackMaxConnDrops",  # SYNs dropped over `ustack serve --max-connections`
    "UstackPcapDropped",  # frames a capture dropped, its disk being behind (pcap.py)
)


class Stats(dict[str, int]):
    """A dict of counters that starts with every known name at 0.

    `stats["TcpExtTW"] += 1` is the whole API; unknown names raise KeyError so a
    typo is caught by the tests instead of silently creating a new counter.
    """

    def __init__(self) -> None:
        super().__init__({name: 0 for name in NAMES})

    def __missing__(self, key: str) -> int:
        raise KeyError(f"unknown counter {key!r}")

"""The sans-IO TCP core: segments and time in; segments, events and deadlines out."""

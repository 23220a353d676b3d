"""SQL the model wrote, handled as untrusted: the read-only, time- and memory-limited sandbox, the worker pool, and the shared parse."""

"""What tests and benchmarks run beside the compositor: lkpub (Go) and peers (Python)."""

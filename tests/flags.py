"""XLA flags for the test session (no jax import: tests/conftest.py sets them before jax
starts)."""

# LLVM at full optimisation is much of a small test's (compile-bound) time; these flags
# leave XLA's HLO, hence its reports and sharding, alone. Every comparison in the suite is
# between two runs under the same flags or against a reference with a tolerance.
# Measured: the whole suite 1,492 s -> 1,259 s on 2 idle cores, every test passing.
FAST_CODEGEN = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
EIGHT_DEVICES = "--xla_force_host_platform_device_count=8"

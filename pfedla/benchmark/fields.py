"""The JSON fields the throughput and scaling benchmarks print (benchmarks/throughput.py, benchmarks/scaling.py):
here, so their tests check them without importing the scripts."""

THROUGHPUT_FIELDS = (
    "case", "algorithm", "engine", "model", "settings", "memory_format", "device", "clients", "clients_per_round",
    "round_s", "client_s", "server_s", "eval_s", "eval_share", "server_share", "samples_per_s", "peak_rss_mib",
    "peak_cuda_mib", "client_gflops", "matmul_peak_gflops", "flop_efficiency", "reference_s", "ratio_to_reference",
)
SCALING_FIELDS = (
    "workload", "algorithm", "model", "setting", "processes", "threads", "memory_format", "device", "clients_per_round",
    "round_s", "client_s", "gather_s", "server_s", "eval_s", "speedup", "model_amdahl_speedup", "wall_s",
    "client_model_bytes", "gathered_bytes_per_rank_per_round", "final_acc_mean",
)

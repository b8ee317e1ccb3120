"""The release gates: quality (an eval suite) and latency (a load test).

Each gate is a pure verdict over measurements (``quality.judge_quality``,
``latency.judge_latency``) plus a runner that takes the measurements; the CLI in
``pipeline.gates.cli`` wires them to the definition's thresholds. Thresholds are
never defaults here: they are always passed in from ``load_definition``.
"""

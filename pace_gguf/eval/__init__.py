"""Evaluation: does the Activation Memory Bank help? Needle-in-a-haystack and long-document QA,
several configurations (AMB settings and long-document strategies) compared case by case on one
model in one run.

    pace-gguf eval niah [MODEL] --haystack DIR --config off --config on --config strategy=stream
    pace-gguf eval longdoc [MODEL] --data quality.jsonl --config off --config "layers=12,26"

`cases` builds the inputs (a NIAH grid, L-Eval rows), `configs` parses the configurations,
`harness` runs every case under every configuration, `scoring` scores the answers and `report`
writes the JSON, the markdown comparison and the heatmaps.
"""

"""PESQ (ITU-T P.862, narrowband) of each Opus complexity's output that
`cargo run --release -p dialtone-codecs --example opus_quality` wrote, against
its PCMU-decoded reference. Needs the PyPI packages numpy and pesq:

    python3 -m venv /tmp/pesq-venv && /tmp/pesq-venv/bin/pip install numpy pesq
    /tmp/pesq-venv/bin/python scripts/pesq_score.py /tmp/opus-quality
"""
import sys, numpy as np
from pesq import pesq
d = sys.argv[1]
ref = np.fromfile(f"{d}/reference.raw", dtype="<i2").astype(np.float32)
print("| complexity | PESQ MOS-LQO (narrowband, P.862) |\n|---|---|")
for c in range(11):
    deg = np.fromfile(f"{d}/opus_c{c}.raw", dtype="<i2").astype(np.float32)
    n = min(len(ref), len(deg))
    print(f"| {c} | {pesq(8000, ref[:n], deg[:n], 'nb'):.3f} |")

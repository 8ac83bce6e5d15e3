"""A synthetic sample with the UCI credit-default schema, so the demo runs with no data given.

The numbers are made up (seeded, deterministic), not the real UCI table: a repayment-status
driven default probability gives the classifier a real signal (AUC ~0.75-0.8).
"""

from __future__ import annotations

from pathlib import Path

COLUMNS = (
    ["ID", "LIMIT_BAL", "SEX", "EDUCATION", "MARRIAGE", "AGE", "PAY_0"]
    + [f"PAY_{i}" for i in range(2, 7)]
    + [f"BILL_AMT{i}" for i in range(1, 7)]
    + [f"PAY_AMT{i}" for i in range(1, 7)]
    + ["default payment next month"]
)


def credit_default_sample(path: Path, rows: int = 4000, seed: int = 7) -> Path:
    """Write the synthetic sample to `path` (atomically) unless it is already there; return the path."""
    path = Path(path)
    if path.exists():
        return path
    import numpy as np  # only when the sample is made (the imports cost seconds on a small machine)
    import pandas as pd

    rng = np.random.default_rng(seed)
    limit = rng.choice(np.arange(10_000, 800_001, 10_000), rows)
    risk = rng.normal(0, 1, rows)
    pay = np.clip(np.round(risk[:, None] * 1.3 + rng.normal(0, 0.9, (rows, 6)) - 0.4), -2, 8).astype(int)
    bill = limit[:, None] * rng.uniform(0.05, 0.9, (rows, 1))  # same draws and order as before: same data
    bill = np.maximum(0, bill * rng.uniform(0.8, 1.1, (rows, 6))).astype(int)
    paid = (bill * np.clip(rng.normal(0.12, 0.1, (rows, 6)) - 0.04 * risk[:, None], 0, 1)).astype(int)
    age = rng.integers(21, 76, rows)
    logit = -1.7 + 1.3 * risk - 0.6 * (limit / 500_000) + 0.25 * (pay[:, 0] > 0)
    default = (rng.uniform(size=rows) < 1 / (1 + np.exp(-logit))).astype(int)
    frame = pd.DataFrame(
        np.column_stack([
            np.arange(1, rows + 1), limit, rng.integers(1, 3, rows), rng.integers(1, 5, rows),
            rng.integers(1, 4, rows), age, pay, bill, paid, default,
        ]),
        columns=COLUMNS,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    frame.to_csv(tmp, index=False)
    tmp.replace(path)
    return path

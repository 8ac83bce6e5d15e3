"""Split the credit-default table into train and test folders (stratified, seeded)."""

import argparse
from pathlib import Path

import pandas as pd
from sklearn.model_selection import train_test_split

TARGET = "default payment next month"

p = argparse.ArgumentParser()
p.add_argument("--data", required=True)
p.add_argument("--test_train_ratio", type=float, default=0.25)
p.add_argument("--seed", type=int, default=42)
p.add_argument("--train_data", required=True)
p.add_argument("--test_data", required=True)
args = p.parse_args()

df = pd.read_csv(args.data)
if TARGET not in df.columns:
    raise SystemExit(f"input {args.data} has no target column {TARGET!r}; columns are {list(df.columns)}")
df = df.drop(columns=[c for c in ("ID",) if c in df.columns])
print(f"read {len(df)} rows x {df.shape[1]} columns; positive rate {df[TARGET].mean():.3f}")
train, test = train_test_split(df, test_size=args.test_train_ratio, stratify=df[TARGET], random_state=args.seed)
for frame, out in ((train, args.train_data), (test, args.test_data)):
    Path(out).mkdir(parents=True, exist_ok=True)
    frame.to_csv(Path(out) / "data.csv", index=False)
print(f"train {len(train)} rows, test {len(test)} rows")

"""Train the two versions of the example churn model, deterministically, on synthetic data.

    python train_churn.py --out models/churn        # writes models/churn/1 and models/churn/2

The data set is *synthetic*: seeded random rows with the columns of IBM's classic telco churn
data set (ChurnData.csv, plus `gender` from the same source's customer table). No real customer
is in it, and nothing is downloaded. The churn label comes from a hand-written logistic formula
with a non-linear short-tenure effect, so version 2 (gradient boosting) has something to find
that version 1 (logistic regression) cannot, and their probabilities visibly differ.

Both versions use the eight features of the sample request in SAP AI Core's documentation
(region, tenure, age, address, income, employ, gender, equip), so that request works unchanged.

Pickles only load reliably into the scikit-learn version that wrote them, so this script runs
inside the runtime image (scripts/build-images does that); metadata.json records the version.
The same seed and scikit-learn version give byte-identical model files.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import sklearn
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, log_loss, roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

SEED = 20240611
ROWS = 5000

# The columns of IBM's telco churn data set, in its order, plus gender (not in ChurnData.csv).
COLUMNS = [
    "region", "tenure", "age", "address", "income", "ed", "employ", "equip", "callcard",
    "wireless", "longmon", "tollmon", "equipmon", "cardmon", "wiremon", "longten", "tollten",
    "cardten", "voice", "pager", "internet", "callwait", "confer", "ebill", "loglong", "logtoll",
    "lninc", "custcat", "gender", "churn",
]  # fmt: skip

# The features both versions are trained on: those of the sample request in AI Core's docs, in
# that order (also the column order of list-form instances and of the V2 "np" tensor).
FEATURES = ["region", "tenure", "age", "address", "income", "employ", "gender", "equip"]
TARGET = "churn"

# The sample request from AI Core's documentation; shipped in metadata.json as an example.
EXAMPLE = {
    "region": 3, "tenure": 37, "age": 53, "address": 13, "income": 48, "employ": 10,
    "gender": 0, "equip": 0,
}  # fmt: skip


def synthetic_churn(rows: int = ROWS, seed: int = SEED) -> pd.DataFrame:
    """Seeded rows shaped like the telco churn data: plausible ranges and correlations."""
    rng = np.random.default_rng(seed)
    n = rows

    def coin(p: Any) -> np.ndarray:
        return (rng.random(n) < p).astype(int)

    region = rng.integers(1, 4, n)
    age = rng.integers(18, 78, n)
    gender = coin(0.5)
    ed = rng.choice([1, 2, 3, 4, 5], n, p=[0.2, 0.3, 0.25, 0.17, 0.08])
    employ = np.floor(rng.beta(1.3, 2.5, n) * (age - 17)).astype(int)
    address = np.floor(rng.beta(1.2, 3.0, n) * (age - 17)).astype(int)
    income = np.clip(np.round(np.exp(rng.normal(3.3 + 0.15 * ed + 0.03 * employ, 0.45))), 9, 1500)
    tenure = rng.integers(1, 73, n)
    custcat = rng.integers(1, 5, n)
    equip = coin(0.3 + 0.2 * (custcat == 4))
    callcard = coin(0.7)
    wireless = coin(0.2 + 0.15 * (custcat >= 3))
    internet = coin(0.25 + 0.3 * (custcat == 4) + 0.1 * (age < 35))
    voice, pager = coin(0.3), coin(0.25)
    callwait, confer = coin(0.5), coin(0.5)
    ebill = coin(0.25 + 0.3 * internet)
    longmon = np.round(np.exp(rng.normal(2.0 + 0.01 * tenure, 0.5)), 2)
    tollmon = np.where(coin(0.5) == 1, np.round(rng.gamma(4.0, 7.0, n), 2), 0.0)
    equipmon = np.where(equip == 1, np.round(np.clip(rng.normal(40, 8, n), 15, 80), 2), 0.0)
    cardmon = np.where(callcard == 1, np.round(rng.gamma(3.0, 5.0, n), 2), 0.0)
    wiremon = np.where(wireless == 1, np.round(np.clip(rng.normal(45, 10, n), 10, 100), 2), 0.0)
    spread = rng.uniform(0.9, 1.1, n)
    longten = np.round(longmon * tenure * spread, 2)
    tollten = np.round(tollmon * tenure * spread, 2)
    cardten = np.round(cardmon * tenure * spread, 0)
    loglong = np.round(np.log(longmon), 3)
    # The IBM file fills logtoll for customers without toll calls; 0 keeps the column numeric.
    logtoll = np.round(np.log(np.where(tollmon > 0, tollmon, 1.0)), 3)
    lninc = np.round(np.log(income), 3)

    # Churn: long-standing, older, settled customers stay; equipment renters and the first year
    # of a contract churn. The short-tenure step and the equip x internet interaction are what
    # a linear model cannot represent.
    logit = (
        0.4
        - 0.045 * tenure
        - 0.025 * (age - 40)
        - 0.03 * address
        - 0.02 * employ
        + 0.004 * (income - 60)
        + 0.8 * equip
        + 1.4 * (tenure <= 12)
        + 0.9 * equip * internet
        + 0.3 * ebill
        - 0.25 * (region == 2)
        + 0.2 * gender * equip
    )
    churn = coin(1.0 / (1.0 + np.exp(-logit)))

    frame = pd.DataFrame(
        {
            "region": region, "tenure": tenure, "age": age, "address": address,
            "income": income, "ed": ed, "employ": employ, "equip": equip, "callcard": callcard,
            "wireless": wireless, "longmon": longmon, "tollmon": tollmon, "equipmon": equipmon,
            "cardmon": cardmon, "wiremon": wiremon, "longten": longten, "tollten": tollten,
            "cardten": cardten, "voice": voice, "pager": pager, "internet": internet,
            "callwait": callwait, "confer": confer, "ebill": ebill, "loglong": loglong,
            "logtoll": logtoll, "lninc": lninc, "custcat": custcat, "gender": gender,
            "churn": churn,
        }
    )  # fmt: skip
    return frame[COLUMNS].astype(float)


def versions(seed: int) -> dict[str, tuple[str, Pipeline]]:
    """Version 1: the IBM lab's model (scaled logistic regression, C=0.01); 2: boosted trees."""
    return {
        "1": (
            "StandardScaler + LogisticRegression(C=0.01, liblinear)",
            Pipeline(
                [
                    ("scale", StandardScaler()),
                    ("classify", LogisticRegression(C=0.01, solver="liblinear")),
                ]
            ),
        ),
        "2": (
            "GradientBoostingClassifier(n_estimators=200, max_depth=2, learning_rate=0.05)",
            Pipeline(
                [
                    (
                        "classify",
                        GradientBoostingClassifier(
                            n_estimators=200, max_depth=2, learning_rate=0.05, random_state=seed
                        ),
                    )
                ]
            ),
        ),
    }


def frame_sha256(frame: pd.DataFrame) -> str:
    return hashlib.sha256(frame.to_csv(index=False).encode()).hexdigest()


def train(out: Path, rows: int, seed: int) -> list[Path]:
    data = synthetic_churn(rows, seed)
    x, y = data[FEATURES], data[TARGET].astype(int)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.2, random_state=seed, stratify=y
    )
    trainer_sha = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()
    written = []
    out.mkdir(parents=True, exist_ok=True)
    for version, (algorithm, pipeline) in versions(seed).items():
        pipeline.fit(x_train, y_train)
        proba = pipeline.predict_proba(x_test)[:, 1]
        metadata = {
            "name": "churn",
            "version": version,
            "algorithm": algorithm,
            "features": FEATURES,
            "target": TARGET,
            "classes": [int(c) for c in pipeline.classes_],
            "sklearn_version": sklearn.__version__,
            "python_version": platform.python_version(),
            "trainer_sha256": trainer_sha,
            "dataset": {
                "kind": "synthetic (seeded; columns of IBM's telco churn data set)",
                "seed": seed,
                "rows": rows,
                "columns": COLUMNS,
                "sha256": frame_sha256(data),
                "churn_rate": round(float(y.mean()), 4),
            },
            "metrics": {
                "test_rows": len(y_test),
                "accuracy": round(float(accuracy_score(y_test, proba >= 0.5)), 4),
                "roc_auc": round(float(roc_auc_score(y_test, proba)), 4),
                "log_loss": round(float(log_loss(y_test, proba)), 4),
            },
            "example": EXAMPLE,
        }
        written.append(write_version(out, version, pipeline, metadata))
    return written


def write_version(out: Path, version: str, pipeline: Pipeline, metadata: dict[str, Any]) -> Path:
    # Write beside the target and swap in at the end, so a server never sees half a model.
    staging = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=out))
    try:
        joblib.dump(pipeline, staging / "model.joblib")
        text = json.dumps(metadata, indent=2, sort_keys=True) + "\n"
        (staging / "metadata.json").write_text(text)
        for path in (staging, *staging.iterdir()):
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
        target = out / version
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
        return target
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for <version>/ folders")
    parser.add_argument("--rows", type=int, default=ROWS, help="rows of synthetic data")
    parser.add_argument("--seed", type=int, default=SEED, help="random seed")
    args = parser.parse_args(argv)
    if args.rows < 100:
        parser.error("--rows must be at least 100")
    try:
        written = train(args.out, args.rows, args.seed)
    except OSError as exc:
        print(f"error: cannot write models to {args.out}: {exc}", file=sys.stderr)
        return 1
    for path in written:
        meta = json.loads((path / "metadata.json").read_text())
        print(
            f"trained churn version {meta['version']} ({meta['algorithm']}): "
            f"test accuracy {meta['metrics']['accuracy']}, ROC AUC {meta['metrics']['roc_auc']} "
            f"-> {path}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

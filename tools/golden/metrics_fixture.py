"""scikit-learn's values for RADAR's evaluation metrics (run from the repository root):

    python tools/golden/metrics_fixture.py

Writes Tests/RadarCoreTests/Fixtures/metrics.json: cases of scores (with ties), labels and
sequence ids, and roc_auc_score, average_precision_score, accuracy at 0.5, the EER from
roc_curve (drop_intermediate=False; linear interpolation where FPR = 1 - TPR), the AUC over
per-sequence mean scores, brier_score_loss, and the expected calibration error over
calibration_curve's 10 uniform bins (each non-empty bin's share of the scores times
|fraction of positives - mean score|).
"""
import json
import os

import numpy as np
from sklearn.calibration import calibration_curve
from sklearn.metrics import accuracy_score, average_precision_score, brier_score_loss, roc_auc_score, roc_curve

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "Tests", "RadarCoreTests", "Fixtures", "metrics.json")


def eer(labels, scores):
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    fnr = 1 - tpr
    d = fpr - fnr
    for k in range(1, len(d)):
        if d[k - 1] <= 0 <= d[k]:
            t = 0.0 if d[k] == d[k - 1] else -d[k - 1] / (d[k] - d[k - 1])
            return float(fpr[k - 1] + t * (fpr[k] - fpr[k - 1]))
    return None


def ece(labels, scores, n_bins=10):
    prob_true, prob_pred = calibration_curve(labels, scores, n_bins=n_bins, strategy="uniform")
    ids = np.searchsorted(np.linspace(0.0, 1.0, n_bins + 1)[1:-1], scores)  # calibration_curve's binning
    counts = np.bincount(ids, minlength=n_bins)
    counts = counts[counts > 0]
    return float(np.sum(counts / len(scores) * np.abs(prob_true - prob_pred)))


def main():
    rng = np.random.default_rng(11)
    cases = []
    for n, ties, sep in ((50, False, 1.0), (120, True, 0.5), (31, True, 3.0), (90, False, 0.0)):
        labels = rng.integers(0, 2, n)
        scores = 1 / (1 + np.exp(-(rng.normal(0, 1, n) + sep * (labels - 0.5))))
        if ties:
            scores = np.round(scores * 10) / 10
        scores = scores.astype(np.float32)
        seqs = [f"s{int(i // 4)}" for i in range(n)]
        for i in range(n):  # a sequence has one label
            labels[i] = labels[(i // 4) * 4]
        seq_ids = sorted(set(seqs))
        seq_scores = [float(np.mean([float(scores[i]) for i in range(n) if seqs[i] == s], dtype=np.float64)) for s in seq_ids]
        seq_labels = [int(labels[seqs.index(s)]) for s in seq_ids]
        cases.append({
            "scores": [round(float(x), 9) for x in scores], "labels": [int(x) for x in labels], "sequences": seqs,
            "auc": roc_auc_score(labels, scores), "average_precision": average_precision_score(labels, scores),
            "accuracy": accuracy_score(labels, (scores >= 0.5).astype(int)), "eer": eer(labels, scores),
            "sequence_auc": roc_auc_score(seq_labels, seq_scores),
            "brier": float(brier_score_loss(labels, scores)), "ece": ece(labels, scores),
        })
    with open(OUT, "w") as f:
        json.dump({"cases": cases}, f)
    print("wrote", OUT)


if __name__ == "__main__":
    main()

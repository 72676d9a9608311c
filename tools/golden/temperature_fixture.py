"""scikit-learn's temperature for RADAR's temperature scaling (run from the repository root):

    python tools/golden/temperature_fixture.py

Writes Tests/RadarCoreTests/Fixtures/temperature.json: cases of float32 logits and labels, the
maximum-likelihood temperature T = 1 / beta, where beta is the coefficient of scikit-learn's
unregularised logistic regression on the logit with no intercept (p = sigmoid(beta * logit)),
and the mean log loss (sklearn.metrics.log_loss) at T = 1 and at the fitted T.
"""
import json
import os

import numpy as np
import sklearn
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "Tests", "RadarCoreTests", "Fixtures", "temperature.json")


def main():
    rng = np.random.default_rng(5)
    cases = []
    # (images, separation, scale): an overconfident model (logits stretched: T > 1), a timid one
    # (T < 1), one near calibrated, and a small noisy one.
    for n, mu, scale in ((400, 1.0, 4.0), (300, 1.5, 0.3), (500, 0.7, 1.0), (37, 0.5, 2.5)):
        labels = rng.integers(0, 2, n)
        # Features N(+-mu, 1) by class: the calibrated logit is 2 mu x; then stretched or squeezed.
        true_logit = 2 * mu * (rng.normal(0, 1, n) + mu * (2 * labels - 1))
        logits = (true_logit * scale).astype(np.float32)
        x = logits.astype(np.float64).reshape(-1, 1)
        model = LogisticRegression(fit_intercept=False, C=np.inf, tol=1e-12, max_iter=100000).fit(x, labels)
        beta = float(model.coef_[0, 0])
        z = logits.astype(np.float64)
        cases.append({
            "logits": [float(v) for v in logits], "labels": [int(v) for v in labels],
            "temperature": 1 / beta,
            "log_loss_before": float(log_loss(labels, 1 / (1 + np.exp(-z)), labels=[0, 1])),
            "log_loss_after": float(log_loss(labels, 1 / (1 + np.exp(-beta * z)), labels=[0, 1])),
        })
    with open(OUT, "w") as f:
        json.dump({"sklearn": sklearn.__version__, "cases": cases}, f)
        f.write("\n")
    print(f"wrote {OUT}: {[round(c['temperature'], 6) for c in cases]}")


if __name__ == "__main__":
    main()

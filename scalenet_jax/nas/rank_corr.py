"""Rank correlation between supernet (one-shot) and stand-alone accuracies (paper Table 4).

```python
rank_correlations(supernet_accs, standalone_accs)   # {'pearson', 'spearman', 'kendall', 'n'}
path_rank_correlation(pairs, supernet_evaluate, standalone_accs)  # evaluates the supernet side first
```
Pearson measures linear agreement; Spearman and Kendall only the ranking, which is what matters for
architecture selection. Computed with `scipy.stats`.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from scipy import stats


def rank_correlations(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
  """Pearson, Spearman and Kendall-τ between two equally long accuracy lists."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.shape != b.shape or a.ndim != 1:
    raise ValueError(f"accuracy lists must be 1-D and equally long, got {a.shape} and {b.shape}")
  if len(a) < 3:
    raise ValueError(f"need at least 3 paths for a correlation, got {len(a)}")
  return {
      "pearson": float(stats.pearsonr(a, b)[0]),
      "spearman": float(stats.spearmanr(a, b)[0]),
      "kendall": float(stats.kendalltau(a, b)[0]),
      "n": int(len(a)),
  }


def path_rank_correlation(
    pairs: Sequence, supernet_evaluate: Callable[[Sequence], Sequence[float]], standalone_accs: Sequence[float]
) -> dict:
  """Correlations between `supernet_evaluate(pairs)` (e.g. a PathEvaluator) and the stand-alone
  accuracies of the same (α, S) pairs; the supernet accuracies are returned too."""
  if len(pairs) != len(standalone_accs):
    raise ValueError(f"{len(pairs)} paths but {len(standalone_accs)} stand-alone accuracies")
  sup = list(supernet_evaluate(pairs))
  out = rank_correlations(sup, standalone_accs)
  out["supernet_accs"] = sup
  return out

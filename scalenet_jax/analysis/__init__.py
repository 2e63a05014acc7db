"""Analyses of ScaleNet expansions (gradient norms, activation histograms, linear CKA, step-0 accuracy).

CLI: `python -m scalenet_jax.analysis --help`; library entry point `report.run(config, AnalysisOptions)`,
`config` being the fine-tuning run's `config_lib.train_config()`.
"""

from scalenet_jax.analysis.cka import CKAAccumulator, linear_cka
from scalenet_jax.analysis.probes import block_table, gradient_norms, make_block_outputs_fn, unshare
from scalenet_jax.analysis.report import AnalysisOptions, run

"""Input data: sources by name, preprocessing recipes, deterministic per-step pipelines.

On-device Mixup/CutMix and label smoothing live in `scalenet_jax.data.augment` (imports jax).
"""

from scalenet_jax.data.pipeline import (
    eval_batches,
    global_batch_indices,
    host_slice,
    num_eval_batches,
    steps_per_epoch,
    train_batches,
)
from scalenet_jax.data.preprocess import (Preprocess, Preprocessor, fashion_mnist_preprocess, imagenet_swin_preprocess)
from scalenet_jax.data.sources import (
    ArraySource,
    ImageFolderSource,
    Source,
    SubsetSource,
    SyntheticSource,
    TfdsSource,
    fashion_mnist,
    get_source,
    minival_split,
    read_idx,
)

r"""ScaleNet 2x UPerNet Swin-T on ADE20K (paper §IV-E, Table IX row): every stage grown 2x by stacking, all
layers reused, adapters r=16 on every block; heads trainable; 512 px crops, 40k steps, AdamW 6e-5, poly.

python -m scalenet_jax.main --config configs/upernet_swin_tiny_2x.py --workdir /tmp/upernet_swin_tiny_2x
python -m scalenet_jax.main --config configs/upernet_swin_tiny_2x.py --workdir /tmp/upernet_swin_tiny_2x --mode export
python -m scalenet_jax.main --config configs/upernet_swin_tiny_2x.py --mode compile --topology v5e-8

`init_from` is timm's ImageNet Swin-T (`pretrained/swin_tiny_patch4_window7_224.safetensors`); an mmseg /
mmdet checkpoint with `backbone.*` keys works too. ADE20K comes from TFDS (`scene_parse150`, data dir
`--config.data.root` or TFDS_DATA_DIR; docs/dense.md says what its annotations hold). Without expansion
(the plain baseline row): `--config.expansion.kind=`.
"""

from scalenet_jax import config_lib


def get_config():
  return config_lib.upernet_paper_config("swin_tiny_patch4_window7_224")

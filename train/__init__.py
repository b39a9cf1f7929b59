"""Training: tenant data, model builders, and the Ray Train + DeepSpeed recipes for fine-tuning
(``train.finetune``) and masked-LM pretraining (``train.pretrain``).

Other packages use only the names below. The driver API that ``tune`` builds on:

    dataset = load_tenant_data(path)
    result = run_training(config, settings, dataset, run_name=...)   # one Ray Train run of the loop
    copy_export(Path(result.checkpoint.path) / "model", out_dir)      # rank 0's export, atomically
    register_and_gate(registry, tenant, out_dir, run_record(...), dataset, promote=True, ...)
    render_figures(read_figure_data(Path(result.checkpoint.path)), folder)  # the run's PNGs, for run_record

Heavy modules (Ray, torch) are imported only when a name that needs them is first used.
"""
from __future__ import annotations

from cluster import lazy_exports

_EXPORTS = {
    # errors
    "TrainError": "train._errors",
    "ConfigError": "train._errors",
    "DataValidationError": "train._errors",
    "BaseModelError": "train._errors",
    # tenant data and bases
    "TenantData": "train._data",
    "load_tenant_data": "train._data",
    "write_jsonl": "train._data",
    "resolve_base": "train._base",
    # fine-tuning: the command's entry point and the driver API a search builds on
    "FinetuneConfig": "train.finetune.config",
    "finetune": "train.finetune.driver",
    "run_training": "train.finetune.driver",
    "uses_gpu": "train._run",
    "copy_export": "train._run",
    "read_loop_state": "train._deepspeed",
    "build_cpu_ops": "train._deepspeed",
    "run_record": "train.finetune.register",
    "register_and_gate": "train.finetune.register",
    "read_figure_data": "train._figures",
    "render_figures": "train._figures",
    "read_manifest": "train.finetune.export",
    "Predictor": "train.finetune.predict",
    # pretraining
    "PretrainConfig": "train.pretrain.config",
    "pretrain": "train.pretrain.driver",
    # the demo tenants' data
    "demo_rows": "train._demo_data",
    "write_demo_data": "train._demo_data",
    # erasure (the attune.erasers entry point)
    "erase_training_files": "train._erase",
}

__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())

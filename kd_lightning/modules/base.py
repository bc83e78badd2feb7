"""What the teacher and the student share: a backbone, SGD with step decay, and the evaluation metrics."""
from __future__ import annotations

from typing import Any, Optional

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from kd_lightning.exceptions import NonFiniteLossError  # re-exported: raised here and by the fast path
from kd_lightning.fast import CompileMode, FastPathMixin
from kd_lightning.models import create_model
from kd_lightning.modules.geometry import EmbeddingGeometry
from kd_lightning.modules.soft_labels import SoftLabelStats, ViewAccuracy
from kd_lightning.exceptions import UserValueError


class ClassifierModule(FastPathMixin, pl.LightningModule):
    """Backbone + optimiser + metrics (`val/acc`, `val/acc_top5`, `val/loss`, `test/*`, geometry on test).

    Args:
        backbone: a name from `kd_lightning.models.MODEL_NAMES`.
        num_classes: linked from the datamodule by the CLI.
        lr: SGD learning rate at a global batch of `data.batch_size` (docs/method.md §6: 0.05; 0.01 for
            MobileNetV2 / ShuffleNet).
        momentum: SGD momentum.
        weight_decay: L2 weight decay on every parameter (as the CRD recipe does).
        lr_milestones: epochs at which the learning rate is multiplied by `lr_decay`.
        lr_decay: the multiplicative step.
        check_finite: stop at the first non-finite loss, naming the step and the part (costs one host sync a step;
            on the fast path the check is asynchronous and stops within one training batch).
        fast: the fast path (kd_lightning/fast, docs/speed.md): same recipe, manual optimization with the whole
            step (forward, loss, backward, fused SGD update, memory enqueue) in one CUDA graph on a GPU, metrics
            summed on the device and logged once per epoch. Single process only.
        compile: fast path: torch.compile the step's loss with this mode (null: no compile).
        cuda_graph: fast path: capture the whole step in one CUDA graph (GPU only).
        steps_per_batch: fast path: optimizer steps per training batch (needs data.gpu_resident=true when > 1).
        soft_label_temperature: T of the soft labels p = softmax(o / T) whose test-set statistics are logged
            (`test/soft_intra_var`, `test/soft_nontarget_mass`, `test/soft_entropy`; docs/method.md §8): the KD
            temperature, 4, so that they describe what a student is taught.
    """

    train_views: int = 1
    #: The name test metrics are logged under: the CLI sets "test_best" for the best-epoch test pass after fit, so
    #: loggers (W&B's summary) keep both passes; results.json maps both back to `test/*` in its last/best sections.
    test_log_name: str = "test"

    def __init__(
        self,
        backbone: str,
        num_classes: int = 100,
        lr: float = 0.05,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        lr_milestones: list[int] = [150, 180, 210],
        lr_decay: float = 0.1,
        check_finite: bool = True,
        fast: bool = False,
        compile: Optional[CompileMode] = None,
        cuda_graph: bool = True,
        steps_per_batch: int = 1,
        soft_label_temperature: float = 4.0,
    ) -> None:
        super().__init__()
        if lr <= 0:
            raise UserValueError(f"model.lr must be > 0, got {lr}")
        self.init_fast_path(fast, compile, cuda_graph, steps_per_batch)  # [fast path] switch; off by default
        self.backbone = create_model(backbone, num_classes=num_classes)
        self.num_classes = num_classes
        self.check_finite = check_finite
        self._optim = dict(lr=lr, momentum=momentum, weight_decay=weight_decay)
        self._schedule = dict(milestones=list(lr_milestones), gamma=lr_decay)
        metric = lambda k: MulticlassAccuracy(num_classes=num_classes, top_k=k, average="micro")  # noqa: E731
        self.val_acc, self.val_acc_top5 = metric(1), metric(min(5, num_classes))
        self.test_acc, self.test_acc_top5 = metric(1), metric(min(5, num_classes))
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()
        self.test_geometry = EmbeddingGeometry(num_classes, self.embedding_dim)
        self.test_soft_labels = SoftLabelStats(num_classes, soft_label_temperature)
        self.test_view_acc = ViewAccuracy()
        self._test_single_view: Optional[torch.Tensor] = None

    # --- network ---------------------------------------------------------------------------------------------------
    @property
    def embedding_dim(self) -> int:
        return self.backbone.num_features

    def pooled_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = self.backbone.forward_head(self.backbone.forward_features(x), pre_logits=True)
        return pooled, self.backbone.get_classifier()(pooled)

    def embed(self, pooled: torch.Tensor) -> torch.Tensor:
        """The L2-normalised embedding whose geometry is measured (and, for the teacher, contrasted)."""
        return F.normalize(pooled.float(), dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    # --- training ----------------------------------------------------------------------------------------------------
    def training_loss(self, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss of one batch and its logged parts (`{"loss": ..., "loss_ce": ..., ...}`)."""
        raise NotImplementedError

    def training_step(self, batch: Any, batch_idx: int) -> Optional[torch.Tensor]:
        self._batch_idx = batch_idx  # for the non-finite message (Lightning's public argument, not its loop state)
        if self.fast_path is not None:  # [fast path] K captured steps of training_loss per batch (kd_lightning/fast)
            return self.fast_path.training_step(batch, batch_idx)
        loss, parts = self.training_loss(batch)
        self.log_train_parts(parts, batch[1].shape[0])
        return loss

    # --- training helpers ------------------------------------------------------------------------------------------
    def log_train_parts(self, parts: dict[str, torch.Tensor], batch_size: int) -> None:
        """Logs `train/<name>` per epoch (mean over steps); checks finiteness first if asked."""
        if self.check_finite:
            # One host sync for all parts; names only on failure.
            finite = torch.stack([torch.isfinite(v.detach()).all() for v in parts.values()]).all()
            if not bool(finite):
                raise NonFiniteLossError(self._non_finite_message(parts))
        self.log_dict({f"train/{k}": v.detach() for k, v in parts.items()}, on_step=False, on_epoch=True,
                      batch_size=batch_size, sync_dist=True)

    def _non_finite_message(self, parts: dict[str, torch.Tensor]) -> str:
        # The parts come before the total: the total is non-finite whenever a part is, so it says least.
        bad = [(k, v) for k, v in parts.items() if not bool(torch.isfinite(v.detach()).all())]
        bad.sort(key=lambda kv: kv[0] == "loss")
        values = ", ".join(f"train/{k}={v.detach().float().flatten()[0].item()}" for k, v in bad)
        trainer = self._trainer
        checkpoint = getattr(trainer, "checkpoint_callback", None) if trainer is not None else None
        last = getattr(checkpoint, "last_model_path", "") or getattr(checkpoint, "best_model_path", "")
        kept = (f"the last good checkpoint is kept: {last} (resume from it with --ckpt_path last once fixed)"
                if last else "no checkpoint had been written yet")
        batch_idx = getattr(self, "_batch_idx", None)
        batch = f", batch {batch_idx}" if batch_idx is not None else ""
        return (
            f"non-finite {bad[0][0]} at global step {self.global_step} (epoch {self.current_epoch}{batch}): {values}. "
            f"Training stopped; {kept}. Lower model.lr, or check the data and the loss weights."
        )

    # --- evaluation ------------------------------------------------------------------------------------------------
    def _evaluate(self, batch: Any, stage: str) -> None:
        images, labels, ids = batch
        pooled, logits = self.pooled_and_logits(images)
        loss = F.cross_entropy(logits.float(), labels, reduction="none")
        acc, acc5, mean_loss = (getattr(self, f"{stage}_{m}") for m in ("acc", "acc_top5", "loss"))
        acc.update(logits, labels)
        acc5.update(logits, labels)
        mean_loss.update(loss)
        log = dict(on_step=False, on_epoch=True)
        name = self.test_log_name if stage == "test" else stage
        self.log(f"{name}/acc", acc, **log)
        self.log(f"{name}/acc_top5", acc5, **log)
        self.log(f"{name}/loss", mean_loss, **log)
        if stage == "test":
            self.test_geometry.update(self.embed(pooled), labels)
            self.test_soft_labels.update(logits, labels)
            if self._test_single_view is not None:
                self.test_view_acc.update(logits, labels, self._test_single_view[ids])

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def on_test_epoch_start(self) -> None:
        # A datamodule that knows which test images show a single view of their class (the synthetic set) says so.
        flags = getattr(getattr(self.trainer, "datamodule", None), "test_single_view", None)
        self._test_single_view = None if flags is None else flags.to(self.device)

    def on_test_epoch_end(self) -> None:
        # Already reduced over DDP ranks by compute(): logged as plain values.
        values = {**self.test_geometry.compute(), **self.test_soft_labels.compute()}
        if self._test_single_view is not None:
            values.update(self.test_view_acc.compute())
        self.log_dict({f"{self.test_log_name}/{k}": v for k, v in values.items()}, sync_dist=False)
        for metric in (self.test_geometry, self.test_soft_labels, self.test_view_acc):
            metric.reset()

    # --- optimisation ----------------------------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = self.make_sgd(params, **self._optim)  # [fast path] torch's SGD, or InStepSGD when fast
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, **self._schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

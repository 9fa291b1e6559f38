"""CTR models built on recis embeddings: each ``model(batch)`` returns the mean BCE loss."""

from recis.models.common import criteo_tables, ctr_loss, mlp
from recis.models.dcn import CrossLayerV2, DCNv2
from recis.models.deepfm import DeepFM
from recis.models.dlrm import DLRM

__all__ = ["DLRM", "CrossLayerV2", "DCNv2", "DeepFM", "criteo_tables", "ctr_loss", "mlp"]

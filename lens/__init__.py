"""lens: load internalized-debate models into TransformerLens and find, probe, steer and ablate their agents."""
from lens import plots
from lens.activations import (ActivationSet, collect_activations, contrast_activations, turn_activations)
from lens.debate_format import DEBATE_TAGS, DebateFormatError, Transcript, Turn, read_jsonl, read_paper_json
from lens.errors import LensError, LensInputError, LensLoadError
from lens.fitting import FIT_METHODS, Readings
from lens.generation import Generation, generate
from lens.interventions import (Ablate, Add, Cap, ablate, calibrate_cap, cap, intervene, intervention_from_dict,
                                projections, steer)
from lens.loading import ModelProvenance, load_model
from lens.probes import PCAProjection, ProbeResult, pca_projection, probe_layers
from lens.rating import SuppressionReport, rate_suppression, response_perplexities, suppression_auc
from lens.sites import SITES, hook_name
from lens.subspace import AgentSubspace, chat_prompts, contrastive_direction, find_agent_subspace, fit_agent_subspace

__all__ = [
    "DEBATE_TAGS", "DebateFormatError", "Transcript", "Turn", "read_jsonl", "read_paper_json",
    "load_model", "ModelProvenance", "LensError", "LensInputError", "LensLoadError",
    "collect_activations", "turn_activations", "contrast_activations", "ActivationSet", "hook_name", "SITES",
    "find_agent_subspace", "fit_agent_subspace", "FIT_METHODS", "Readings", "AgentSubspace",
    "contrastive_direction", "chat_prompts",
    "probe_layers", "ProbeResult", "pca_projection", "PCAProjection",
    "Add", "Ablate", "Cap", "intervene", "intervention_from_dict", "steer", "ablate", "cap", "calibrate_cap",
    "projections", "generate", "Generation",
    "rate_suppression", "SuppressionReport", "response_perplexities", "suppression_auc",
    "plots",
]

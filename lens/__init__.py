"""lens: load internalized-debate models into TransformerLens and find, probe, steer and ablate their agents."""
from lens import export, geometry, monitor, plots
from lens.activations import ActivationSet, collect_activations, hook_name, turn_activations
from lens.activations import contrast_activations
from lens.debate_format import DEBATE_TAGS, DebateFormatError, Transcript, Turn
from lens.debate_format import read_jsonl, read_paper_json
from lens.export import export_vector, import_vector
from lens.errors import LensError, LensInputError, LensLoadError
from lens.fitting import FIT_METHODS, Readings
from lens.generation import Generation, generate
from lens.interventions import ablate, steer
from lens.integrity import ModelFingerprint, fingerprint_model, read_base_record, write_base_record
from lens.interventions import Ablate, Add, Cap, calibrate_cap, cap, intervene, intervention_from_dict, projections
from lens.loading import PARITY_TOL, ModelProvenance, load_model, resolve_device, resolve_dtype
from lens.probes import PCAProjection, ProbeResult, pca_projection, probe_layers
from lens.rating import ParetoFrontier, SuppressionReport, pareto_frontier, rate_suppression, response_perplexities
from lens.rating import suppression_auc
from lens.sites import SITES
from lens.subspace import AgentSubspace, chat_prompts, contrastive_direction, find_agent_subspace
from lens.subspace import fit_agent_subspace

__all__ = [
    "DEBATE_TAGS", "DebateFormatError", "Transcript", "Turn",
    "load_model", "ModelProvenance", "LensError", "LensInputError", "LensLoadError",
    "PARITY_TOL", "resolve_device", "resolve_dtype",
    "fingerprint_model", "write_base_record", "read_base_record", "ModelFingerprint",
    "collect_activations", "turn_activations", "ActivationSet", "hook_name",
    "find_agent_subspace", "AgentSubspace", "contrastive_direction", "chat_prompts",
    "probe_layers", "ProbeResult", "pca_projection", "PCAProjection",
    "steer", "ablate", "rate_suppression", "SuppressionReport", "response_perplexities", "suppression_auc",
    "pareto_frontier", "ParetoFrontier",
    "export", "export_vector", "import_vector", "geometry", "monitor",
    "plots",
    "read_jsonl", "read_paper_json", "contrast_activations", "SITES", "fit_agent_subspace", "FIT_METHODS", "Readings",
    "Add", "Ablate", "Cap", "intervene", "intervention_from_dict", "cap", "calibrate_cap", "projections",
    "generate", "Generation",
]

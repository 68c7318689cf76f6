"""lens: load internalized-debate models into TransformerLens and find, probe, steer and ablate their agents."""
from lens.debate_format import DEBATE_TAGS, DebateFormatError, Transcript, Turn

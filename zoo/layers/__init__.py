"""Building blocks shared by every model family. No model logic lives here."""

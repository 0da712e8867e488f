"""Essay tables: reading with validation, text normalization, PERSUADE join, folds."""

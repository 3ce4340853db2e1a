"""Commands of ``nas-lightning`` that are not Trainer entry points."""

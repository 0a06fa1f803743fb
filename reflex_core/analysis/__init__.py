"""What a Reflex model learned, measured without a framework: the length-generalisation
tasks and their scoring (`length`), the codebook's statistics (`codebook`), the adapters'
summaries and the report (`report`). The backends supply arrays and runs; nothing here
imports mlx or torch, and nothing here needs the training corpus at run time."""

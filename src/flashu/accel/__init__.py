"""FlashU: task-aware acceleration (pruning, layer skipping, hybrid FFN, head cache, guidance, token pruning)."""

"""Text-to-image and understanding pipelines (official Show-o2 semantics, explicit per-request sessions)."""

"""Quality measures for synthetic patches: mask consistency (segment and compare) and realism (FID, KID)."""

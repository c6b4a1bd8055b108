"""Visual-token pruning and merging: FastV (inside the decoder), VisionZip and
PruMerge+ (in the vision tower: on the projector's input under LLaVA, on the merger's
output under Qwen2-VL).  Knob ``ratio`` = share of the visual tokens kept; text tokens
are always kept."""

-- MiniMax-M3 split over 4 tensor-parallel ranks: each rank holds 64/4 query
-- heads and 4/4 KV groups (with their index heads); the group size stays 16.
-- The other minimax-m3-tp*.lua files differ only in tp.
local tp = 4

layer {
	name = "minimax-m3-tp" .. tp,
	heads = { q = 64 // tp, kv = 4 // tp, index = 4 // tp },
	head_dim = 128,
	index_dim = 128,
	block = 128,
	topk = 16,
	local_blocks = 1,
	sink_blocks = 0,
	dtype = "bf16",
	causal = true,
	arch = { "sm_90a", "sm_80" },
	tune = {
		dense_fwd = { block_m = { 64, 128 }, block_n = { 64 } },
	},
}

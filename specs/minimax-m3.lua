-- MiniMax-M3 sparse attention, one full layer (no tensor parallelism):
-- 64 query heads in 4 GQA groups of 16, one index head per group.  Each
-- query reads at most topk * block = 2048 key/value tokens.
layer {
	name = "minimax-m3",
	heads = { q = 64, kv = 4, index = 4 },
	head_dim = 128,
	index_dim = 128,
	block = 128,		-- tokens per KV block, also the KV page size
	topk = 16,		-- blocks kept per (query, group)
	local_blocks = 1,	-- the query's own block is always kept
	sink_blocks = 0,
	dtype = "bf16",
	causal = true,
	arch = { "sm_90a", "sm_80" },
	tune = {
		dense_fwd = { block_m = { 64, 128 }, block_n = { 32, 64 } },
	},
}

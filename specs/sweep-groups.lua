-- A computed spec: one layer per GQA group size G (layers g1 .. g16), four
-- KV heads each, to see how the kernels scale with the heads per group.
for _, g in ipairs({ 1, 2, 4, 8, 16 }) do
	layer {
		name = "g" .. g,
		heads = { q = 4 * g, kv = 4 },
		head_dim = 128,
	}
end

"""Small configurations of the four reference examples, shared by the code-generation and backend tests: narrow
and two layers deep, with irregular sizes where they exercise masks (BERT's intermediate size 37)."""

GPT2 = dict(vocab_size=97, n_positions=32, n_embd=64, n_layer=2, n_head=4)
BERT = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            max_position_embeddings=64, type_vocab_size=2)
VIT = dict(image_size=32, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
           intermediate_size=48, num_labels=10)
LLAMA = dict(vocab_size=101, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=8,
             num_key_value_heads=2, max_position_embeddings=64)

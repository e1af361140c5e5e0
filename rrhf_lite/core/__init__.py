"""The first floor: what every method is made of. Losses (tensors in, tensors out), log-probs of replies, the one
training loop, loading models with LoRA or QLoRA, sampling, and reading and checking preference data.

Knows no method, no profile, no stage and no tiny world: it imports only from the libraries below it."""

/* gguf_model.c - being written */

/* gguf.c - being written */

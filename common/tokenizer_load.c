/* tokenizer_load.c - being written */

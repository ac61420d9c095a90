/* tokenizer.c - being written */

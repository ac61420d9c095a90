/* chat.c - being written */

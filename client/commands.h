/* commands.h - the subcommands of the `cinder` program, each `int cmd_X(int argc, char **argv)`
 * taking the arguments after its name and returning the process exit status. */
#ifndef CINDER_COMMANDS_H
#define CINDER_COMMANDS_H

int cmd_inspect(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_detokenize(int argc, char **argv);
int cmd_generate(int argc, char **argv);
int cmd_write_model(int argc, char **argv);

#endif

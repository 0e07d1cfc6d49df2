//! `dfe completions SHELL`: a completion script generated from the clap definition, so it
//! always knows every subcommand and option of this very binary.

use clap::CommandFactory;
use clap_complete::Shell;

use crate::args::{Cli, CompletionsArgs};
use crate::output::emit;

/// The completion script of `dfe` for `shell`.
pub fn script(shell: Shell) -> String {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "dfe", &mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// `dfe completions`.
pub fn run(args: &CompletionsArgs) -> anyhow::Result<()> {
    emit(&script(args.shell))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shell_gets_a_script_naming_the_subcommands_and_options() {
        let bash = script(Shell::Bash);
        assert!(bash.contains("complete -F _dfe"), "bash registers its function");
        for word in ["provision", "snapshots", "download", "--offering", "--via", "--wait", "--timeout"] {
            assert!(bash.contains(word), "bash completes {word}");
        }
        assert!(script(Shell::Zsh).starts_with("#compdef dfe"));
        let fish = script(Shell::Fish);
        assert!(fish.contains("complete -c dfe") && fish.contains("snapshots"), "{fish}");
    }
}

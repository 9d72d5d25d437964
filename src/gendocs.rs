//! `xks-bridge generate-docs --out DIR` (hidden): man pages and shell completions written from
//! the clap definition itself, so the packaged documentation cannot drift from the CLI.
//! `scripts/package.sh` runs it on the freshly built binary.
//!
//! Layout under `DIR` (the package's install paths, below `/usr/share`):
//!
//! - `man/man1/xks-bridge.1` and one `xks-bridge-<sub>[-<subsub>].1` per visible subcommand;
//! - `completions/xks-bridge.bash`, `completions/_xks-bridge` (zsh),
//!   `completions/xks-bridge.fish`.

use clap_complete::Shell;
use std::path::{Path, PathBuf};

/// Why the documentation could not be written; the text is what `generate-docs` prints.
#[derive(Debug, thiserror::Error)]
pub enum GendocsError {
    /// A directory or file under `--out` cannot be created or written.
    #[error("{}: {source}", path.display())]
    Write {
        /// The directory or file.
        path: PathBuf,
        /// What the file system said.
        source: std::io::Error,
    },
    /// clap_mangen could not render a page.
    #[error("man page {page}: {source}")]
    Render {
        /// The page's name (`xks-bridge-keys-create`).
        page: String,
        /// What rendering said.
        source: std::io::Error,
    },
}

/// Writes every man page and completion script for `cmd` under `out`.
pub fn generate(cmd: clap::Command, out: &Path) -> Result<(), GendocsError> {
    let mut cmd = cmd;
    cmd.build();
    let man = out.join("man/man1");
    let completions = out.join("completions");
    for dir in [&man, &completions] {
        std::fs::create_dir_all(dir).map_err(|source| GendocsError::Write {
            path: dir.clone(),
            source,
        })?;
    }
    let name = cmd.get_name().to_owned();
    write_man_pages(&cmd, &name, &man)?;
    for (shell, file) in [
        (Shell::Bash, format!("{name}.bash")),
        (Shell::Zsh, format!("_{name}")),
        (Shell::Fish, format!("{name}.fish")),
    ] {
        let mut buf = Vec::new();
        clap_complete::generate(shell, &mut without_hidden(&cmd), name.clone(), &mut buf);
        write(&completions.join(file), &buf)?;
    }
    Ok(())
}

/// `cmd` without its hidden subcommands (the completion generators offer every subcommand).
fn without_hidden(cmd: &clap::Command) -> clap::Command {
    let mut root = clap::Command::new(env!("CARGO_PKG_NAME"))
        .version(env!("CARGO_PKG_VERSION"))
        .subcommand_required(cmd.is_subcommand_required_set())
        .subcommands(
            cmd.get_subcommands()
                .filter(|s| !s.is_hide_set() && s.get_name() != "help")
                .cloned(),
        );
    if let Some(about) = cmd.get_about() {
        root = root.about(about.clone());
    }
    root
}

/// The page for `cmd` (named `page`), then one per visible subcommand, recursively.
fn write_man_pages(cmd: &clap::Command, page: &str, dir: &Path) -> Result<(), GendocsError> {
    // Subcommand pages are titled after their file (`xks-bridge-keys-create`), the name
    // `man` finds them by.
    let mut buf = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .title(page.to_owned())
        .render(&mut buf)
        .map_err(|source| GendocsError::Render {
            page: page.to_owned(),
            source,
        })?;
    write(&dir.join(format!("{page}.1")), &buf)?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        if sub.get_name() == "help" {
            continue;
        }
        write_man_pages(sub, &format!("{page}-{}", sub.get_name()), dir)?;
    }
    Ok(())
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), GendocsError> {
    std::fs::write(path, bytes).map_err(|source| GendocsError::Write {
        path: path.to_owned(),
        source,
    })
}

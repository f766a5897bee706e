//! `baton certs`: a cluster CA and node certificates for development and
//! tests. Production clusters use their own CA's PEM files.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use baton_transport::certs::Authority;

/// Certificates for the cluster's mutual TLS.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum CertsCommand {
    /// Create a cluster CA: <dir>/ca.pem (give to every node) and
    /// <dir>/ca.key (keep it to issue node certificates; never on a node).
    Ca {
        /// Where to write the files.
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// The CA's name.
        #[arg(long, default_value = "Baton cluster CA")]
        name: String,
        /// Replace an existing CA (every node certificate it issued stops
        /// being trusted by nodes given the new ca.pem).
        #[arg(long)]
        force: bool,
    },
    /// Issue a certificate for a node: <dir>/<name>.pem and <dir>/<name>.key,
    /// signed by <dir>/ca.key. The name is what peers dial and know it by.
    Node {
        /// The node's name, like a host name (`node-1`, `baton-0.baton`).
        name: String,
        /// Where the CA is and where to write the files.
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
    },
}

fn write(path: &Path, text: &str, secret: bool) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("could not write {}", path.display()))?;
    if secret {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("could not restrict {}", path.display()))?;
    }
    Ok(())
}

pub(crate) fn run(command: CertsCommand) -> anyhow::Result<()> {
    match command {
        CertsCommand::Ca { dir, name, force } => {
            let (cert, key) = (dir.join("ca.pem"), dir.join("ca.key"));
            if !force && (cert.exists() || key.exists()) {
                bail!(
                    "{} already holds a CA; use --force to replace it (nodes would need new certificates)",
                    dir.display()
                );
            }
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("could not create {}", dir.display()))?;
            let ca = Authority::generate(&name)?;
            write(&cert, &ca.files().cert_pem, false)?;
            write(&key, &ca.files().key_pem, true)?;
            println!(
                "wrote {} (give it to every node) and {} (keep it off the nodes)",
                cert.display(),
                key.display()
            );
            println!("next: baton certs node <name> --dir {}", dir.display());
        }
        CertsCommand::Node { name, dir } => {
            let read = |file: &str| {
                let path = dir.join(file);
                std::fs::read_to_string(&path).with_context(|| {
                    format!(
                        "could not read {} (create a CA with `baton certs ca --dir {}`)",
                        path.display(),
                        dir.display()
                    )
                })
            };
            let ca = Authority::load(&read("ca.pem")?, &read("ca.key")?)?;
            let issued = ca.issue(&name)?;
            let (cert, key) = (
                dir.join(format!("{name}.pem")),
                dir.join(format!("{name}.key")),
            );
            write(&cert, &issued.cert_pem, false)?;
            write(&key, &issued.key_pem, true)?;
            println!(
                "wrote {} and {} for node `{name}`",
                cert.display(),
                key.display()
            );
        }
    }
    Ok(())
}

package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	pb "github.com/ringmaster/ringmaster/api/ringmaster/v1"
	"github.com/ringmaster/ringmaster/internal/coordinator"
	"github.com/ringmaster/ringmaster/internal/pki"
)

// EnvCredentials names the environment variable that says which
// credential file the CLI uses.
const EnvCredentials = "RINGMASTER_CREDENTIALS"

// clientFlags say how the CLI authenticates.
type clientFlags struct {
	credentials string
	insecure    bool
}

// transport finds the CLI's credential: --credentials, then
// $RINGMASTER_CREDENTIALS, then the admin credential of a coordinator run
// in this directory (ringmaster-data/admin.credentials). It returns the
// dial option and the address the credential names ("" if none).
func (f clientFlags) transport() (grpc.DialOption, string, error) {
	if f.insecure {
		return grpc.WithTransportCredentials(insecure.NewCredentials()), "", nil
	}
	path := f.credentials
	if path == "" {
		path = os.Getenv(EnvCredentials)
	}
	if path == "" {
		local := filepath.Join("ringmaster-data", coordinator.AdminCredentialFile)
		if _, err := os.Stat(local); err != nil {
			return nil, "", fmt.Errorf("no credential: give --credentials FILE or set %s (a coordinator writes %s into its data directory at first start), or --insecure for a coordinator run with --insecure", EnvCredentials, coordinator.AdminCredentialFile)
		}
		path = local
	}
	cred, err := pki.LoadCredential(path)
	if err != nil {
		return nil, "", err
	}
	cfg, err := cred.ClientTLS(pki.HasRole(pki.RoleCoordinator))
	if err != nil {
		return nil, "", err
	}
	return grpc.WithTransportCredentials(credentials.NewTLS(cfg)), cred.Coordinator, nil
}

func newTokenCommand(client clientFunc) *cobra.Command {
	cmd := &cobra.Command{Use: "token", Short: "Manage join tokens, with which new workers get their certificates"}
	var role string
	var ttl time.Duration
	create := &cobra.Command{
		Use:   "create --role worker [--ttl 24h]",
		Short: "Print a join token for workers (give it to `worker --join-token` or $RINGMASTER_JOIN_TOKEN); admin only",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			api, done, err := client()
			if err != nil {
				return err
			}
			defer done()
			ctx, cancel := context.WithTimeout(cmd.Context(), rpcTimeout)
			defer cancel()
			resp, err := api.CreateToken(ctx, &pb.CreateTokenRequest{Role: role, TtlSeconds: int64(ttl / time.Second)})
			if err != nil {
				return rpcError(err)
			}
			fmt.Fprintln(cmd.OutOrStdout(), resp.Token)
			fmt.Fprintf(cmd.ErrOrStderr(), "valid until %s; anyone holding it can join a worker, so pass it as a secret\n", time.UnixMilli(resp.ExpiresMs).Format(time.RFC3339))
			return nil
		},
	}
	create.Flags().StringVar(&role, "role", "worker", "role of the identities the token lets join (worker)")
	create.Flags().DurationVar(&ttl, "ttl", coordinator.DefaultTokenTTL, "how long the token may be used (1m to 720h)")
	cmd.AddCommand(create)
	return cmd
}

func newCredentialsCommand(client clientFunc, addr *string) *cobra.Command {
	cmd := &cobra.Command{Use: "credentials", Short: "Issue user credentials (admin, submit or view)"}
	var name, role, out string
	var validity time.Duration
	create := &cobra.Command{
		Use:   "create --name NAME --role admin|submit|view [--out FILE]",
		Short: "Make a key here and have the coordinator certify it with a role; writes a credential file (admin only)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if name == "" {
				return errors.New("--name is required: who the credential is for (letters, digits, - _ . @)")
			}
			if out == "" {
				out = name + ".credentials"
			}
			if out != "-" {
				if _, err := os.Stat(out); err == nil {
					return fmt.Errorf("--out %s exists; remove it or name another file", out)
				}
			}
			key, csr, err := pki.NewCSR()
			if err != nil {
				return err
			}
			api, done, err := client()
			if err != nil {
				return err
			}
			defer done()
			ctx, cancel := context.WithTimeout(cmd.Context(), rpcTimeout)
			defer cancel()
			resp, err := api.IssueCredential(ctx, &pb.IssueCredentialRequest{Name: name, Role: role, Csr: csr, ValiditySeconds: int64(validity / time.Second)})
			if err != nil {
				return rpcError(err)
			}
			keyPEM, err := pki.EncodeKey(key)
			if err != nil {
				return err
			}
			cred := &pki.Credential{Identity: pki.Identity{Role: role, Name: name}, Coordinator: *addr, CA: resp.CaPem, Cert: resp.CertPem, Key: string(keyPEM)}
			if _, err := cred.TLSCertificate(); err != nil {
				return fmt.Errorf("the coordinator's answer: %w", err)
			}
			if out == "-" {
				// To stdout: for `kubectl exec ... --out - > FILE` from an
				// image without a shell.
				b, err := cred.Marshal()
				if err != nil {
					return err
				}
				_, err = cmd.OutOrStdout().Write(b)
				return err
			}
			if err := cred.Write(out); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "wrote %s (%s); use it with --credentials %s or %s=%s\n", out, cred.Identity, out, EnvCredentials, out)
			return nil
		},
	}
	f := create.Flags()
	f.StringVar(&name, "name", "", "who the credential is for")
	f.StringVar(&role, "role", pki.RoleView, "admin (everything), submit (submit, cancel, resume, read) or view (read and watch only)")
	f.StringVar(&out, "out", "", "credential file to write (default NAME.credentials; - prints it, e.g. through kubectl exec)")
	f.DurationVar(&validity, "validity", pki.LeafValidity, "how long the certificate is valid")
	cmd.AddCommand(create)
	return cmd
}

// addExternalTLSFlags adds the TLS files for an external etcd and NATS.
func addExternalTLSFlags(cmd *cobra.Command, etcd, nats *pki.ExternalTLS) {
	f := cmd.Flags()
	for _, s := range []struct {
		name string
		e    *pki.ExternalTLS
	}{{"etcd", etcd}, {"nats", nats}} {
		f.StringVar(&s.e.CAFile, s.name+"-ca-file", "", "CA certificate (PEM) of an external "+s.name+" served over TLS (default: the cluster's CA)")
		f.StringVar(&s.e.CertFile, s.name+"-cert-file", "", "client certificate (PEM) for an external "+s.name+" (default: this identity's)")
		f.StringVar(&s.e.KeyFile, s.name+"-key-file", "", "client key (PEM) for an external "+s.name)
	}
}

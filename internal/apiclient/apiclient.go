package apiclient

import (
	"fmt"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
)

// Addresses splits a comma-separated list of coordinator addresses,
// refusing an empty list or an empty entry.
func Addresses(list string) ([]string, error) {
	var out []string
	for _, a := range strings.Split(list, ",") {
		a = strings.TrimSpace(a)
		if a == "" {
			return nil, fmt.Errorf("coordinator address list %q has an empty entry; give host:port[,host:port...]", list)
		}
		out = append(out, a)
	}
	return out, nil
}

// Dial returns a connection to the first coordinator replica of list that
// answers (see the package comment). It does not wait for a connection.
func Dial(list string, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	addrs, err := Addresses(list)
	if err != nil {
		return nil, err
	}
	opts = append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, opts...)
	if len(addrs) == 1 {
		conn, err := grpc.NewClient(addrs[0], opts...)
		if err != nil {
			return nil, fmt.Errorf("coordinator address %q: %w", addrs[0], err)
		}
		return conn, nil
	}
	// A resolver of its own per connection: no global registration.
	r := manual.NewBuilderWithScheme("ringmaster")
	st := resolver.State{}
	for _, a := range addrs {
		st.Addresses = append(st.Addresses, resolver.Address{Addr: a})
	}
	r.InitialState(st)
	opts = append(opts, grpc.WithResolvers(r), grpc.WithDefaultServiceConfig(`{"loadBalancingConfig":[{"pick_first":{}}]}`))
	conn, err := grpc.NewClient(r.Scheme()+":///coordinators", opts...)
	if err != nil {
		return nil, fmt.Errorf("coordinator addresses %q: %w", list, err)
	}
	return conn, nil
}

package embedded

import (
	"strings"
	"testing"
)

func TestOwnPeerURL(t *testing.T) {
	ic := "c1=http://10.0.0.1:2380,c2=http://10.0.0.2:2380,c3=http://10.0.0.3:2380"
	u, err := OwnPeerURL(ic, "c2")
	if err != nil || u.Host != "10.0.0.2:2380" {
		t.Fatalf("OwnPeerURL(c2) = %v, %v", u, err)
	}
	for _, tc := range []struct{ list, name, want string }{
		{ic, "c4", `no entry for this replica's --name "c4"`},
		{"c1=http://a:1,c1=http://b:2", "c1", "names member \"c1\" twice"},
		{"c1=a:1", "c1", "URL must be http://host:port"},
		{"c1", "c1", "want name=http://host:port"},
		{"c1=http://a", "c1", "URL must be http://host:port"},
	} {
		_, err := OwnPeerURL(tc.list, tc.name)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("OwnPeerURL(%q, %q) = %v, want an error with %q", tc.list, tc.name, err, tc.want)
		}
	}
}

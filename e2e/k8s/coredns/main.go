// Command coredns is CoreDNS from its pinned Go module with only the plugins
// the test cluster's DNS needs: Service and Pod names of cluster.local from
// the API server. CoreDNS's own main links every plugin (cloud DNS providers
// included); choosing the plugin chain here keeps the build small.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/ready"
)

func init() {
	// The plugin chain, in the order CoreDNS's own directive list has them.
	dnsserver.Directives = []string{"bind", "ready", "health", "errors", "cache", "kubernetes"}
}

func main() {
	coremain.Run()
}

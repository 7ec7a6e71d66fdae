// CoreDNS for the real node of kubetask's dev environment, with only the
// plugins its Corefile uses (see node.py): the upstream main links every
// plugin, cloud back ends included, and compiling those costs minutes.
// There is deliberately no `forward` plugin: the cluster answers
// cluster.local and nothing else, so no query ever leaves this machine.
package main

import (
	_ "github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/template"
)

func main() {
	coremain.Run()
}

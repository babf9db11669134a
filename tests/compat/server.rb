# Sinatra upstream of the HTTP compatibility suite, on WEBrick: ruby server.rb HOST PORT
# (Debian's ruby, ruby-sinatra 3 on ruby-rack 2.2, and ruby-webrick, which `cargo xtask setup`
# installs). A classic app, so Rack::MethodOverride is on: `_method` in a form body overrides
# a POST's method. Rack reads parameters its own way: a POST without a Content-Type, or with a
# list of types that starts as a form's, is read as a form, and Rack 2 reads `]]amount` as
# `amount` and `_method]` as `_method`. The routes say what they acted on and record it:
# GET /compat/seen lists it.
require 'json'
require 'webrick'
require 'sinatra'

host, port = ARGV
set :bind, host
set :port, port.to_i
set :server, 'webrick'
set :environment, :production
set :logging, false
set :quiet, true
set :server_settings, { AccessLog: [], Logger: WEBrick::Log.new($stderr, WEBrick::Log::WARN) }

SEEN = []
SEEN_LOCK = Mutex.new

def saw(what = {})
  line = { 'method' => request.request_method, 'path' => request.path_info }.merge(what)
  SEEN_LOCK.synchronize { SEEN << line }
end

def answer(what)
  content_type :json
  JSON.generate(what.merge('server' => 'sinatra'))
end

# Another tenant's refunds, on the same server: Sinatra's `host_name` condition reads
# `request.host`, which Rack takes from `X-Forwarded-Host` whoever sends it.
post '/v1/refunds', host_name: 'tenant-b.example' do
  saw('tenant' => 'b')
  answer('refunded' => 'tenant b')
end

# `amount` as Sinatra reads a form (params: the query and a form body), else from the JSON
# body.
post '/v1/refunds' do
  amount = params['amount']
  if amount.nil?
    request.body.rewind
    amount = JSON.parse(request.body.read)['amount']
  end
  saw('amount' => amount)
  answer('refunded' => amount)
end

post '/v1/repos/:name' do
  saw
  answer('updated' => params['name'], 'method' => request.request_method)
end

delete '/v1/repos/:name' do
  saw
  answer('deleted' => params['name'])
end

get '/compat/seen' do
  content_type :json
  SEEN_LOCK.synchronize { JSON.generate(SEEN) }
end
